//! `mcp-meter stripe reconcile` end to end: the real binary against the
//! fake Stripe API of `common::fake_stripe` (real HTTP on loopback), on
//! real databases. Local state is made through the CLI (and the store API
//! for the meter outbox), Stripe's through the typed client and the fake.
//!
//! * a paid credit pack never granted is listed and left alone; `--fix`
//!   grants it once (ledger key `checkout:cs_…`), a second `--fix` finds
//!   nothing to do; a pack already granted is no difference;
//! * a subscription whose status differs from Stripe's is listed and
//!   fixed; one Stripe does not know is listed, not fixable;
//! * a parked meter batch is listed and put back by `--fix`;
//! * a Stripe customer deleted at Stripe is listed;
//! * what cannot be repaired says why (unknown pack, unknown customer),
//!   `--since` limits the Checkout Sessions (`created[gte]`), every page
//!   of them is read, a subscription bought through Checkout but never
//!   applied is applied;
//! * no `secret_key`, or Stripe failing, is an error and changes nothing.

#![recursion_limit = "256"]

mod common;
// Only the Stripe tests use the fake, so it is not part of `common`.
#[path = "common/fake_stripe.rs"]
mod fake_stripe;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use common::billing::{add_customer, balance, grant, ledger};
use common::db::TestDb;
use common::{admin_json, admin_text, bin};
use fake_stripe::{FakeStripe, Fault};
use mcp_meter::store::Store;
use mcp_meter_plugin::identity::{CallId, CustomerId, UnixMillis};
use mcp_meter_plugin::ledger::{ChargeKey, MeteredUsage};
use mcp_meter_plugin::outbox::{OutboxFilter, OutboxStatus};
use serde_json::{Value, json};
use stripe_checkout::CheckoutSessionMode;
use stripe_checkout::checkout_session::{CreateCheckoutSession, CreateCheckoutSessionLineItems};
use stripe_core::customer::CreateCustomer;

const PLANS: &str = r#"
[[plans]]
id = "metered"
model = "usage"
usage = { event_name = "mcp_calls" }

[[plans]]
id = "starter"
model = "credits"
prices = { default = 1 }

[[plans]]
id = "team"
model = "subscription"
currency = "usd"
subscription = { included_calls = 100 }
"#;

/// The batch id of the parked meter events the tests make.
const BATCH: &str = "mcp-meter-mb-reconcile-test";

/// A configuration over `db` with the fake at `fake`; `secret` adds
/// `secret_key`.
fn config(db: &str, fake: &FakeStripe, secret: bool) -> String {
    let secret = if secret {
        "secret_key = \"sk_test_reconcile\"\n"
    } else {
        ""
    };
    format!(
        "[upstream]\ncommand = {:?}\nargs = [\"demo-upstream\"]\n\
         [database]\nurl = {db:?}\n{PLANS}\n\
         [stripe]\n{secret}api_base = {:?}\nrequest_timeout_secs = 2\n\
         webhook_secrets = [\"whsec_test_reconcile\"]\n\
         success_url = \"https://example.test/thanks\"\n\
         plan_prices = {{ team = \"price_team\" }}\n\
         credit_packs = [{{ id = \"pack-100\", credits = 100, price_id = \"price_pack100\" }}]\n",
        bin(),
        fake.base_url()
    )
}

/// The configuration file, written to `dir`.
fn config_file(dir: &Path, toml: &str) -> PathBuf {
    let path = dir.join("mcp-meter.toml");
    std::fs::write(&path, toml).expect("write config");
    path
}

/// Runs `mcp-meter stripe reconcile ARGS… --config F`: (exit ok, stdout,
/// stderr). Blocking: the fake answers from the test's other worker.
fn reconcile(config: &Path, args: &[&str]) -> (bool, String, String) {
    let output = std::process::Command::new(bin())
        .args(["stripe", "reconcile"])
        .args(args)
        .args(["--config", config.to_str().expect("utf-8 path")])
        .output()
        .expect("run mcp-meter");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// `reconcile --json ARGS…`, parsed; fails the test on a non-zero exit.
fn reconcile_json(config: &Path, args: &[&str]) -> Value {
    let mut all = vec!["--json"];
    all.extend(args);
    let (ok, out, err) = reconcile(config, &all);
    assert!(ok, "{args:?}: {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

/// The report's differences as (kind, customer, Stripe id, outcome status).
fn differences(report: &Value) -> Vec<(String, String, String, String)> {
    let text = |v: &Value| v.as_str().unwrap_or("-").to_owned();
    report["differences"]
        .as_array()
        .expect("differences")
        .iter()
        .map(|d| {
            (
                text(&d["kind"]),
                text(&d["customer"]),
                text(&d["stripe_id"]),
                text(&d["outcome"]["status"]),
            )
        })
        .collect()
}

/// The difference of `kind` about `stripe_id`.
fn difference<'a>(report: &'a Value, kind: &str, stripe_id: &str) -> &'a Value {
    report["differences"]
        .as_array()
        .expect("differences")
        .iter()
        .find(|d| d["kind"] == kind && d["stripe_id"] == stripe_id)
        .unwrap_or_else(|| panic!("no {kind} difference for {stripe_id}: {report:#}"))
}

/// A Stripe customer made at the fake with the typed client.
async fn stripe_customer(fake: &FakeStripe) -> String {
    let customer = CreateCustomer::new()
        .send(&fake.client())
        .await
        .expect("a Stripe customer");
    customer.id.as_str().to_owned()
}

/// A Checkout Session made at the fake with the typed client, then
/// completed (paid).
async fn completed_session(
    fake: &FakeStripe,
    stripe_customer: &str,
    ours: Option<&str>,
    metadata: &[(&str, &str)],
    subscription: bool,
) -> String {
    let mut line = CreateCheckoutSessionLineItems::new();
    line.price = Some(
        if subscription {
            "price_team"
        } else {
            "price_pack100"
        }
        .to_owned(),
    );
    line.quantity = Some(1);
    let mode = if subscription {
        CheckoutSessionMode::Subscription
    } else {
        CheckoutSessionMode::Payment
    };
    let metadata: HashMap<String, String> = metadata
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    let mut request = CreateCheckoutSession::new()
        .mode(mode)
        .customer(stripe_customer)
        .line_items(vec![line])
        .metadata(metadata)
        .success_url("https://example.test/thanks");
    if let Some(ours) = ours {
        request = request.client_reference_id(ours);
    }
    let session = request
        .send(&fake.client())
        .await
        .expect("a Checkout Session");
    let id = session.id.as_str().to_owned();
    fake.complete_checkout_session(&id);
    id
}

/// A paid session for `pack-100`, of `ours` (as `client_reference_id`).
async fn pack_session(fake: &FakeStripe, stripe_customer: &str, ours: &str) -> String {
    completed_session(
        fake,
        stripe_customer,
        Some(ours),
        &[
            ("mcp_meter_credit_pack", "pack-100"),
            ("mcp_meter_customer_id", ours),
        ],
        false,
    )
    .await
}

/// Two meter events of `customer` in batch [`BATCH`], parked after a 400.
async fn parked_batch(store: &Arc<dyn Store>, customer: &str) {
    let customer = CustomerId::new(customer);
    for n in 0..2 {
        store
            .meter_usage(&MeteredUsage {
                customer_id: customer.clone(),
                charge_key: ChargeKey::new(format!("reconcile-{n}")),
                call_id: CallId::new(format!("call_reconcile_{n}")),
                plan_id: "metered".into(),
                tool: Some("echo".into()),
                event_name: "mcp_calls".into(),
                unit: "calls".into(),
                units: 1,
                at: UnixMillis::now(),
            })
            .await
            .expect("meter usage");
    }
    let ids: Vec<i64> = outbox(store, OutboxStatus::Pending)
        .await
        .iter()
        .map(|e| e["id"].as_i64().expect("id"))
        .collect();
    store
        .claim_meter_batch(&ids, BATCH)
        .await
        .expect("claim batch");
    store
        .mark_meter_batch_failed(BATCH, "Stripe answered 400: No such meter mcp_calls", None)
        .await
        .expect("park batch");
}

/// The outbox events in `status`, as JSON.
async fn outbox(store: &Arc<dyn Store>, status: OutboxStatus) -> Vec<Value> {
    let filter = OutboxFilter {
        status: Some(status),
        customer: None,
        after_id: None,
        limit: 1000,
    };
    let events = store.meter_events(&filter).await.expect("outbox");
    events
        .iter()
        .map(|e| serde_json::to_value(e).expect("JSON"))
        .collect()
}

/// `subscriptions set` through the CLI.
fn set_subscription(db: &str, customer: &str, status: &str, external_id: &str) {
    let (ok, out) = admin_text(
        db,
        &[
            "subscriptions",
            "set",
            "--customer",
            customer,
            "--plan",
            "team",
            "--status",
            status,
            "--external-id",
            external_id,
        ],
    );
    assert!(ok, "{out}");
}

fn subscription(db: &str, customer: &str) -> Value {
    admin_json(
        db,
        &["subscriptions", "show", "--customer", customer, "--json"],
    )
}

async fn reconcile_lists_then_repairs_differences(db: TestDb) {
    let fake = FakeStripe::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let url = db.url().to_owned();
    let path = config_file(dir.path(), &config(&url, &fake, true));
    let store = db.open().await;

    // A credit pack paid twice: one never granted, one granted already.
    let buyer = add_customer(&url, "Buyer", "starter");
    let buyer_at_stripe = stripe_customer(&fake).await;
    let missing = pack_session(&fake, &buyer_at_stripe, &buyer).await;
    let granted = pack_session(&fake, &buyer_at_stripe, &buyer).await;
    grant(&url, &buyer, 100, &format!("checkout:{granted}"));
    // A session still open is none of reconcile's business.
    let open = pack_session(&fake, &buyer_at_stripe, &buyer).await;
    fake.update_checkout_session(
        &open,
        json!({ "status": "open", "payment_status": "unpaid" }),
    );

    // A subscription past due at Stripe, active here; one Stripe never had.
    let subscriber = add_customer(&url, "Subscriber", "starter");
    let subscriber_at_stripe = stripe_customer(&fake).await;
    fake.add_subscription(FakeStripe::subscription_json(
        "sub_team",
        &subscriber_at_stripe,
        "price_team",
        "past_due",
    ));
    set_subscription(&url, &subscriber, "active", "sub_team");
    let stranger = add_customer(&url, "Stranger", "starter");
    set_subscription(&url, &stranger, "active", "sub_unknown");

    // A Stripe customer deleted at Stripe.
    let gone = add_customer(&url, "Gone", "starter");
    fake.add_customer("cus_Deleted", None);
    fake.delete_customer("cus_Deleted");
    store
        .attach_stripe_customer(
            &CustomerId::new(gone.as_str()),
            "cus_Deleted",
            UnixMillis::now(),
        )
        .await
        .expect("link");

    // A parked meter batch.
    parked_batch(&store, &buyer).await;

    // Without --fix: every difference listed, nothing changed.
    let report = reconcile_json(&path, &[]);
    let mut found = differences(&report);
    found.sort();
    let mut expected = vec![
        (
            "credit_pack_not_granted",
            &buyer,
            missing.as_str(),
            "fixable",
        ),
        ("parked_meter_batch", &buyer, BATCH, "fixable"),
        (
            "stripe_customer_missing",
            &gone,
            "cus_Deleted",
            "not_fixable",
        ),
        ("subscription_differs", &subscriber, "sub_team", "fixable"),
        (
            "subscription_unknown_at_stripe",
            &stranger,
            "sub_unknown",
            "not_fixable",
        ),
    ]
    .into_iter()
    .map(|(k, c, s, o)| (k.to_owned(), c.clone(), s.to_owned(), o.to_owned()))
    .collect::<Vec<_>>();
    expected.sort();
    assert_eq!(found, expected, "{report:#}");
    assert_eq!(report["checked"]["checkout_sessions"], 2, "{report:#}");
    assert_eq!(report["checked"]["customers"], 4);
    assert_eq!(report["checked"]["subscriptions"], 2);
    assert_eq!(report["outbox"]["parked_batches"][0]["events"], 2);
    let differs = difference(&report, "subscription_differs", "sub_team");
    let detail = differs["detail"].as_str().expect("detail");
    assert!(
        detail.contains("status active here, past_due at Stripe"),
        "{detail}"
    );
    let unknown = difference(&report, "subscription_unknown_at_stripe", "sub_unknown");
    assert!(
        unknown["outcome"]["note"]
            .as_str()
            .is_some_and(|n| n.contains("subscriptions set")),
        "{unknown}"
    );
    assert_eq!(balance(&url, &buyer), 100);
    assert_eq!(subscription(&url, &subscriber)["status"], "active");
    assert_eq!(outbox(&store, OutboxStatus::Parked).await.len(), 2);

    // The human report: one line per difference.
    let (ok, text, err) = reconcile(&path, &[]);
    assert!(ok, "{err}");
    assert!(text.contains("5 differences (0 fixed)"), "{text}");
    let line = text
        .lines()
        .find(|l| l.starts_with("credit_pack_not_granted"))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(
        line.contains(&buyer)
            && line.contains(&missing)
            && line.contains("not fixed: run with --fix"),
        "{line}"
    );
    let line = text
        .lines()
        .find(|l| l.starts_with("stripe_customer_missing"))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(
        line.contains("deleted at Stripe") && line.contains("not fixed: restore"),
        "{line}"
    );

    // --fix: the pack granted once, Stripe's subscription applied, the
    // batch queued again; what cannot be fixed stays as it is.
    let fixed = reconcile_json(&path, &["--fix"]);
    for (kind, id) in [
        ("credit_pack_not_granted", missing.as_str()),
        ("subscription_differs", "sub_team"),
        ("parked_meter_batch", BATCH),
    ] {
        assert_eq!(
            difference(&fixed, kind, id)["outcome"]["status"],
            "fixed",
            "{fixed:#}"
        );
    }
    assert_eq!(
        difference(&fixed, "stripe_customer_missing", "cus_Deleted")["outcome"]["status"],
        "not_fixable"
    );
    assert_eq!(balance(&url, &buyer), 200);
    let purchases: Vec<Value> = ledger(&url, &buyer)
        .into_iter()
        .filter(|e| e["idempotency_key"] == format!("checkout:{missing}"))
        .collect();
    assert_eq!(purchases.len(), 1, "{purchases:?}");
    assert_eq!(purchases[0]["kind"], "purchase");
    assert_eq!(purchases[0]["amount"], 100);
    let after = subscription(&url, &subscriber);
    assert_eq!(after["status"], "past_due", "{after}");
    assert_eq!(after["plan_id"], "team");
    assert!(after["current_period_end"].is_i64(), "{after}");
    assert!(outbox(&store, OutboxStatus::Parked).await.is_empty());
    assert_eq!(outbox(&store, OutboxStatus::Pending).await.len(), 2);

    // A second --fix has nothing left to repair.
    let again = reconcile_json(&path, &["--fix"]);
    let mut left: Vec<String> = differences(&again).into_iter().map(|d| d.0).collect();
    left.sort();
    assert_eq!(
        left,
        ["stripe_customer_missing", "subscription_unknown_at_stripe"],
        "{again:#}"
    );
    assert_eq!(balance(&url, &buyer), 200);
    assert_eq!(again["outbox"]["pending_events"], 2);
    assert_eq!(again["outbox"]["pending_value"], 2);
}

each_backend!(reconcile_lists_then_repairs_differences);

// Multi-threaded: the CLI runs as a blocking child process while the fake
// Stripe answers it from this runtime.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_cannot_be_repaired_says_why_and_since_limits_sessions() {
    let db = TestDb::sqlite().await;
    let fake = FakeStripe::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let url = db.url().to_owned();
    let path = config_file(dir.path(), &config(&url, &fake, true));
    let store = db.open().await;
    let buyer = add_customer(&url, "Buyer", "starter");
    let at_stripe = stripe_customer(&fake).await;
    store
        .attach_stripe_customer(
            &CustomerId::new(buyer.as_str()),
            &at_stripe,
            UnixMillis::now(),
        )
        .await
        .expect("link");

    // Ten days ago: a pack paid, never granted.
    let now = fake.now();
    fake.set_now(Some(now - 10 * 86_400));
    let old = pack_session(&fake, &at_stripe, &buyer).await;
    fake.set_now(None);
    // A pack not configured; a customer that does not exist; a session
    // naming its customer only by the linked Stripe customer.
    let unknown_pack = completed_session(
        &fake,
        &at_stripe,
        Some(&buyer),
        &[("mcp_meter_credit_pack", "pack-999")],
        false,
    )
    .await;
    let nobody = completed_session(
        &fake,
        &at_stripe,
        Some("cus_nobody"),
        &[("mcp_meter_credit_pack", "pack-100")],
        false,
    )
    .await;
    let by_stripe_id = completed_session(
        &fake,
        &at_stripe,
        None,
        &[("mcp_meter_credit_pack", "pack-100")],
        false,
    )
    .await;
    // A subscription bought through Checkout that never reached us.
    let subscribed = completed_session(
        &fake,
        &at_stripe,
        Some(&buyer),
        &[("mcp_meter_plan", "team")],
        true,
    )
    .await;
    fake.update_checkout_session(&subscribed, json!({ "subscription": "sub_new" }));
    fake.add_subscription(FakeStripe::subscription_json(
        "sub_new",
        &at_stripe,
        "price_team",
        "active",
    ));

    let since = chrono::DateTime::from_timestamp(now - 86_400, 0)
        .expect("a time")
        .to_rfc3339();
    let recent = reconcile_json(&path, &["--since", &since]);
    let listed = fake.requests_to("GET", "/v1/checkout/sessions");
    let bound = (now - 86_400).to_string();
    assert_eq!(
        listed.last().and_then(|r| r.param("created[gte]")),
        Some(bound.as_str()),
        "{listed:?}"
    );
    let mut found = differences(&recent);
    found.sort();
    let mut expected = vec![
        (
            "credit_pack_not_granted",
            buyer.clone(),
            by_stripe_id.clone(),
            "fixable",
        ),
        (
            "subscription_not_applied",
            buyer.clone(),
            "sub_new".to_owned(),
            "fixable",
        ),
        (
            "unknown_credit_pack",
            buyer.clone(),
            unknown_pack.clone(),
            "not_fixable",
        ),
        (
            "unknown_customer",
            "cus_nobody".to_owned(),
            nobody.clone(),
            "not_fixable",
        ),
    ]
    .into_iter()
    .map(|(k, c, s, o)| (k.to_owned(), c, s, o.to_owned()))
    .collect::<Vec<_>>();
    expected.sort();
    assert_eq!(found, expected, "{recent:#}");
    let pack = difference(&recent, "unknown_credit_pack", &unknown_pack);
    assert!(
        pack["outcome"]["note"]
            .as_str()
            .is_some_and(|n| n.contains("credit_packs")),
        "{pack}"
    );
    let stranger = difference(&recent, "unknown_customer", &nobody);
    assert!(
        stranger["outcome"]["note"]
            .as_str()
            .is_some_and(|n| n.contains("does not exist")),
        "{stranger}"
    );
    // Without --since the old session is there too.
    let all = reconcile_json(&path, &[]);
    difference(&all, "credit_pack_not_granted", &old);
    assert_eq!(all["checked"]["checkout_sessions"], 5);

    let (ok, _, err) = reconcile(&path, &["--since", "yesterday"]);
    assert!(!ok && err.contains("--since"), "{err}");

    // --fix grants both packs and applies the subscription.
    let fixed = reconcile_json(&path, &["--fix"]);
    assert_eq!(fixed["fix"], true);
    assert_eq!(
        difference(&fixed, "subscription_not_applied", "sub_new")["outcome"]["status"],
        "fixed"
    );
    assert_eq!(balance(&url, &buyer), 200);
    let subscription = subscription(&url, &buyer);
    assert_eq!(
        (
            &subscription["status"],
            &subscription["external_id"],
            &subscription["plan_id"]
        ),
        (&json!("active"), &json!("sub_new"), &json!("team"))
    );
    let left: Vec<String> = differences(&reconcile_json(&path, &[]))
        .into_iter()
        .map(|d| d.0)
        .collect();
    assert_eq!(left.len(), 2, "{left:?}");
    // The human report shows them too.
    let (ok, text, err) = reconcile(&path, &[]);
    assert!(ok, "{err}");
    assert!(text.contains("2 differences (0 fixed):"), "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("unknown_credit_pack") && l.contains(&unknown_pack)),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_page_of_sessions_is_read() {
    let db = TestDb::sqlite().await;
    let fake = FakeStripe::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = config_file(dir.path(), &config(db.url(), &fake, true));
    let at_stripe = stripe_customer(&fake).await;
    for _ in 0..101 {
        completed_session(
            &fake,
            &at_stripe,
            Some("cus_nobody"),
            &[("mcp_meter_credit_pack", "pack-100")],
            false,
        )
        .await;
    }
    let report = reconcile_json(&path, &[]);
    assert_eq!(report["checked"]["checkout_sessions"], 101);
    assert_eq!(differences(&report).len(), 101);
    let listed = fake.requests_to("GET", "/v1/checkout/sessions");
    assert_eq!(listed.len(), 2, "{listed:?}");
    assert!(listed[1].param("starting_after").is_some(), "{listed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_secret_key_reconcile_is_an_error() {
    let db = TestDb::sqlite().await;
    let fake = FakeStripe::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = config_file(dir.path(), &config(db.url(), &fake, false));
    let (ok, out, err) = reconcile(&path, &[]);
    assert!(!ok, "{out}");
    assert!(err.contains("reconcile needs [stripe] secret_key"), "{err}");
    assert!(fake.requests().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stripe_failing_is_an_error_and_changes_nothing() {
    let db = TestDb::sqlite().await;
    let fake = FakeStripe::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let url = db.url().to_owned();
    let path = config_file(dir.path(), &config(&url, &fake, true));
    let store = db.open().await;
    let buyer = add_customer(&url, "Buyer", "starter");
    let at_stripe = stripe_customer(&fake).await;
    pack_session(&fake, &at_stripe, &buyer).await;
    parked_batch(&store, &buyer).await;

    fake.push_fault(Some("/v1/checkout/sessions"), Fault::Status(500));
    let (ok, out, err) = reconcile(&path, &["--fix"]);
    assert!(!ok, "{out}");
    assert!(
        err.contains("Stripe could not be read") && err.contains("nothing was changed"),
        "{err}"
    );
    assert!(err.contains("500"), "{err}");
    assert_eq!(fake.pending_faults(), 0);
    assert_eq!(balance(&url, &buyer), 0);
    assert_eq!(outbox(&store, OutboxStatus::Parked).await.len(), 2);

    // Once Stripe answers, the same command repairs both.
    let fixed = reconcile_json(&path, &["--fix"]);
    assert_eq!(differences(&fixed).len(), 2, "{fixed:#}");
    assert_eq!(balance(&url, &buyer), 100);
}
