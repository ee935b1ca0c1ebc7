//! Outbound Stripe end to end: the real proxy (over its demo upstream)
//! with `[stripe] secret_key` and `api_base` pointed at the fake Stripe
//! API of `common::fake_stripe` (real HTTP on loopback), on real
//! databases.
//!
//! * usage reaches Stripe Meters once, through 500s, lost answers, a
//!   `kill -9` while a send is in flight, and a parked batch retried from
//!   the CLI;
//! * a refusal carries a payment link that opens a Checkout Session;
//! * a customer opens checkout with their own key
//!   (`POST /api/v1/me/checkout`), and the operator from the CLI.

#![recursion_limit = "256"]

mod common;
// Only these tests use the fake, so it is not part of `common` (which
// every test binary compiles).
#[path = "common/fake_stripe.rs"]
mod fake_stripe;
#[path = "common/stripe_sign.rs"]
mod stripe_sign;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::billing::{add_customer, balance, call, client, create_key, ledger};
use common::db::TestDb;
use common::{Proxy, admin_json, admin_text, bin, eventually};
use fake_stripe::{FakeStripe, Fault};
use serde_json::{Value, json};

const METER_PATH: &str = "/v1/billing/meter_events";
const EVENT: &str = "mcp_calls";

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

[[plans]]
id = "payg"
name = "Pay as you go"
model = "per_call"
currency = "usd"
prices = { default = "0.25" }
per_call = { period = "day", minimum = "0.50" }
"#;

/// The proxy's configuration over `db` with the fake at `fake` and
/// `extra` lines in `[stripe]`.
fn config(db: &str, fake: &FakeStripe, extra: &str) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[upstream]\ncommand = {:?}\nargs = [\"demo-upstream\"]\n\
         [database]\nurl = {db:?}\nmax_connections = 10\n{PLANS}\n\
         [stripe]\nsecret_key = \"sk_test_outbound\"\napi_base = {:?}\nrequest_timeout_secs = 2\n\
         webhook_secrets = [\"whsec_test_outbound\"]\n\
         success_url = \"https://example.test/thanks\"\ncancel_url = \"https://example.test/pricing\"\n\
         public_url = \"https://tools.example.test\"\n\
         plan_prices = {{ team = \"price_team\" }}\n\
         credit_packs = [{{ id = \"pack-100\", credits = 100, price_id = \"price_pack100\" }}]\n\
         {extra}\n",
        bin(),
        fake.base_url()
    )
}

fn start(dir: &std::path::Path, toml: &str) -> Proxy {
    let path = dir.join("mcp-meter.toml");
    std::fs::write(&path, toml).expect("write config");
    Proxy::start(
        &["serve", "--config", path.to_str().expect("utf-8 path")],
        &[],
    )
}

/// Makes `n` successful `echo` calls as `key`.
async fn echo_calls(proxy: &Proxy, key: &str, n: usize) {
    let client = client(proxy, key).await;
    for i in 0..n {
        let answer = client
            .post(&call(
                json!(i),
                "echo",
                json!({ "message": format!("call {i}") }),
            ))
            .await
            .response();
        assert!(answer.get("result").is_some(), "{answer}");
    }
}

/// The outbox rows (CLI JSON).
fn outbox(db: &str, status: Option<&str>) -> Vec<Value> {
    let mut args = vec!["outbox", "list", "--limit", "10000", "--json"];
    if let Some(status) = status {
        args.extend(["--status", status]);
    }
    admin_json(db, &args).as_array().expect("a list").clone()
}

/// Waits until every outbox row is sent.
async fn all_sent(db: &str, within: Duration) -> bool {
    eventually(within, || {
        let rows = outbox(db, None);
        !rows.is_empty() && rows.iter().all(|r| r["status"] == "sent")
    })
    .await
}

/// The Stripe customer the fake created for our customer `ours`.
fn stripe_customer_of(fake: &FakeStripe, ours: &str) -> String {
    let matching: Vec<Value> = fake
        .customers()
        .into_iter()
        .filter(|c| c["metadata"]["mcp_meter_customer_id"] == ours)
        .collect();
    assert_eq!(
        matching.len(),
        1,
        "one Stripe customer for {ours}: {matching:?}"
    );
    matching[0]["id"].as_str().expect("an id").to_owned()
}

/// Every accepted meter event's identifier is unique, and every request
/// for one identifier carried it as its idempotency key too.
fn assert_sent_once_each(fake: &FakeStripe) {
    let events = fake.meter_events();
    let identifiers: BTreeSet<&str> = events.iter().map(|e| e.identifier.as_str()).collect();
    assert_eq!(identifiers.len(), events.len(), "{events:?}");
    for request in fake.requests_to("POST", METER_PATH) {
        assert_eq!(
            request.idempotency_key.as_deref(),
            request.param("identifier"),
            "the batch id is both identifier and idempotency key: {request:?}"
        );
    }
}

async fn usage_reaches_stripe_once_through_failures(db: TestDb) {
    let fake = FakeStripe::start().await;
    // Three 500s, then an answer lost after the event was recorded.
    for _ in 0..3 {
        fake.push_fault(Some(METER_PATH), Fault::Status(500));
    }
    fake.push_fault(Some(METER_PATH), Fault::StatusAfterEffect(502));
    let dir = tempfile::tempdir().expect("tempdir");
    let url = db.url().to_owned();
    let proxy = start(dir.path(), &config(&url, &fake, ""));
    let customer = add_customer(&url, "Metered", "metered");
    let key = create_key(&url, &customer);
    echo_calls(&proxy, &key, 6).await;

    assert!(
        all_sent(&url, Duration::from_secs(60)).await,
        "every event sent: {:?}",
        outbox(&url, None)
    );
    let stripe = stripe_customer_of(&fake, &customer);
    assert_eq!(
        fake.meter_total(&stripe, EVENT),
        6,
        "{:?}",
        fake.meter_events()
    );
    assert_sent_once_each(&fake);
    // The first batch went through 3 failures, a lost answer, and the
    // retry that found it delivered: 5 requests for one event at Stripe.
    let requests = fake.requests_to("POST", METER_PATH);
    let mut by_identifier: BTreeMap<String, Vec<Option<u16>>> = BTreeMap::new();
    for r in &requests {
        by_identifier
            .entry(r.param("identifier").unwrap_or_default().to_owned())
            .or_default()
            .push(r.status);
    }
    let first = requests[0].param("identifier").expect("an identifier");
    assert_eq!(
        by_identifier[first][..4],
        [Some(500), Some(500), Some(500), Some(502)],
        "{by_identifier:?}"
    );
    assert!(by_identifier[first].len() >= 5, "{by_identifier:?}");
    assert_eq!(
        fake.meter_events()
            .iter()
            .filter(|e| e.identifier == first)
            .count(),
        1
    );
    // One Stripe customer, created once, with our id in its metadata.
    assert_eq!(fake.requests_to("POST", "/v1/customers").len(), 1);
    drop(proxy);
}

async fn a_kill_during_a_send_sends_once_after_restart(db: TestDb) {
    let fake = FakeStripe::start().await;
    // The first send hangs at Stripe (which records it when done).
    fake.push_fault(Some(METER_PATH), Fault::Slow(Duration::from_secs(3)));
    let dir = tempfile::tempdir().expect("tempdir");
    let url = db.url().to_owned();
    let toml = config(&url, &fake, "");
    let mut proxy = start(dir.path(), &toml);
    let customer = add_customer(&url, "Crashy", "metered");
    let key = create_key(&url, &customer);
    echo_calls(&proxy, &key, 4).await;
    assert!(
        eventually(Duration::from_secs(20), || !fake
            .requests_to("POST", METER_PATH)
            .is_empty())
        .await,
        "a send started"
    );
    proxy.kill9();
    let pending = outbox(&url, Some("pending"));
    assert!(!pending.is_empty(), "the kill left the batch unmarked");
    assert!(
        pending.iter().all(|r| r["batch"].is_string()),
        "{pending:?}"
    );

    let proxy = start(dir.path(), &toml);
    assert!(
        all_sent(&url, Duration::from_secs(60)).await,
        "{:?}",
        outbox(&url, None)
    );
    // Let the slow first attempt finish at the fake too.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let stripe = stripe_customer_of(&fake, &customer);
    assert_eq!(
        fake.meter_total(&stripe, EVENT),
        4,
        "{:?}",
        fake.meter_events()
    );
    assert_sent_once_each(&fake);
    drop(proxy);
}

async fn a_parked_batch_waits_for_the_operator(db: TestDb) {
    let fake = FakeStripe::start().await;
    // A refusal that will not pass parks the batch at once.
    fake.push_fault(Some(METER_PATH), Fault::Status(400));
    let dir = tempfile::tempdir().expect("tempdir");
    let url = db.url().to_owned();
    let proxy = start(dir.path(), &config(&url, &fake, "meter_max_attempts = 3"));
    let customer = add_customer(&url, "Parked", "metered");
    let key = create_key(&url, &customer);
    echo_calls(&proxy, &key, 3).await;
    assert!(
        eventually(Duration::from_secs(30), || !outbox(&url, Some("parked"))
            .is_empty())
        .await,
        "{:?}",
        outbox(&url, None)
    );
    let parked = outbox(&url, Some("parked"));
    assert!(
        parked[0]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("400")),
        "{parked:?}"
    );
    // Let any other batch finish, then see nothing more reaches Stripe.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let total_before: i64 = fake.meter_events().iter().map(|e| e.value).sum();
    let parked_units: i64 = outbox(&url, Some("parked"))
        .iter()
        .map(|r| r["value"].as_i64().expect("value"))
        .sum();
    assert_eq!(total_before + parked_units, 3);

    let id = parked[0]["id"].as_i64().expect("id").to_string();
    let (ok, out) = admin_text(&url, &["outbox", "retry", &id]);
    assert!(ok, "{out}");
    let (ok, out) = admin_text(&url, &["outbox", "retry", &id]);
    assert!(!ok && out.contains("no parked meter event"), "{out}");
    assert!(all_sent(&url, Duration::from_secs(30)).await);
    let stripe = stripe_customer_of(&fake, &customer);
    assert_eq!(fake.meter_total(&stripe, EVENT), 3);
    assert_sent_once_each(&fake);
    drop(proxy);
}

/// A per-call charge of 0.25 USD for `customer` at `at`, as the billing
/// layer accrues it.
async fn charge(store: &dyn mcp_meter_plugin::ledger::Ledger, customer: &str, key: &str, at: i64) {
    use mcp_meter_plugin::identity::{CallId, CustomerId, UnixMillis};
    use mcp_meter_plugin::ledger::{Accrual, ChargeKey, PriceSchedule};
    let day = 86_400_000;
    store
        .accrue(&Accrual {
            customer_id: CustomerId::new(customer),
            charge_key: ChargeKey::new(key),
            call_id: CallId::new(format!("call_{key}")),
            plan_id: "payg".into(),
            tool: Some("echo".into()),
            currency: "usd".into(),
            counter: "calls".into(),
            period_start: UnixMillis(at - at.rem_euclid(day)),
            schedule: PriceSchedule::Flat { price: 250_000 },
            quantity: 1,
            at: UnixMillis(at),
        })
        .await
        .expect("accrue");
}

async fn per_call_periods_become_invoice_items_once(db: TestDb) {
    let fake = FakeStripe::start().await;
    fake.push_fault(Some("/v1/invoiceitems"), Fault::Status(500));
    let dir = tempfile::tempdir().expect("tempdir");
    let url = db.url().to_owned();
    let heavy = add_customer(&url, "Heavy", "payg");
    let light = add_customer(&url, "Light", "payg");
    let fresh = add_customer(&url, "Fresh", "payg");
    let store = db.open().await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64;
    let day = 86_400_000;
    let today = now - now.rem_euclid(day);
    let yesterday = today - day;
    for (n, at) in [yesterday + 1_000, yesterday + 2_000, today - 1]
        .into_iter()
        .enumerate()
    {
        charge(&*store, &heavy, &format!("h{n}"), at).await;
    }
    charge(&*store, &light, "l0", yesterday + 5_000).await;
    charge(&*store, &fresh, "f0", today + 1).await;
    let toml = config(&url, &fake, "invoice_delay_secs = 0");
    let proxy = start(dir.path(), &toml);

    let items = |status: &str| {
        admin_json(&url, &["invoices", "list", "--status", status, "--json"])
            .as_array()
            .expect("a list")
            .clone()
    };
    assert!(
        eventually(Duration::from_secs(40), || items("sent").len() == 2).await,
        "{:?}",
        items("pending")
    );
    let at_stripe = fake.invoice_items();
    assert_eq!(at_stripe.len(), 2, "{at_stripe:?}");
    let of = |ours: &str| {
        let stripe = stripe_customer_of(&fake, ours);
        at_stripe
            .iter()
            .find(|i| i["customer"] == stripe.as_str())
            .unwrap_or_else(|| panic!("an invoice item for {ours}: {at_stripe:?}"))
            .clone()
    };
    // 3 calls at 0.25: 0.75 USD. 1 call: 0.25, raised to the 0.50 minimum.
    let heavy_item = of(&heavy);
    assert_eq!(
        (heavy_item["amount"].as_i64(), &heavy_item["currency"]),
        (Some(75), &json!("usd"))
    );
    assert_eq!(heavy_item["period"]["start"], yesterday / 1_000);
    assert_eq!(heavy_item["period"]["end"], today / 1_000 - 1);
    assert_eq!(heavy_item["metadata"]["mcp_meter_plan"], "payg");
    let light_item = of(&light);
    assert_eq!(light_item["amount"], 50);
    assert!(
        light_item["description"]
            .as_str()
            .is_some_and(|d| d.contains("Pay as you go") && d.contains("minimum")),
        "{light_item}"
    );
    // Today's period has not closed: nothing for it.
    assert!(
        fake.customers()
            .iter()
            .all(|c| c["metadata"]["mcp_meter_customer_id"] != fresh.as_str())
    );
    let sent = items("sent");
    assert!(
        sent.iter().all(|i| i["external_id"]
            .as_str()
            .is_some_and(|id| id.starts_with("ii_"))),
        "{sent:?}"
    );
    let light_row = sent
        .iter()
        .find(|i| i["customer_id"] == light.as_str())
        .expect("light's row");
    assert_eq!(
        (
            light_row["charged"].as_i64(),
            light_row["minimum_applied"].as_bool()
        ),
        (Some(250_000), Some(true))
    );
    // The 500 was retried with the same key.
    let posts = fake.requests_to("POST", "/v1/invoiceitems");
    assert_eq!(posts.len(), 3, "{posts:?}");
    assert_eq!(posts[0].status, Some(500));
    assert!(posts.iter().filter(|p| p.status == Some(200)).count() == 2);
    let failed_key = posts[0].idempotency_key.clone().expect("a key");
    assert!(
        posts[1..]
            .iter()
            .any(|p| p.idempotency_key.as_ref() == Some(&failed_key))
    );

    // A restart closes the same period again: nothing new is queued or sent.
    drop(proxy);
    let proxy = start(dir.path(), &toml);
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(fake.requests_to("POST", "/v1/invoiceitems").len(), 3);
    assert_eq!(items("sent").len(), 2);
    let (ok, out) = admin_text(&url, &["invoices", "retry", "1"]);
    assert!(!ok && out.contains("no parked invoice item"), "{out}");
    drop(proxy);
}

each_backend!(
    usage_reaches_stripe_once_through_failures,
    a_kill_during_a_send_sends_once_after_restart,
    a_parked_batch_waits_for_the_operator,
    per_call_periods_become_invoice_items_once,
);

/// The proxy's base URL (its MCP URL without `/mcp`).
fn base(proxy: &Proxy) -> String {
    proxy
        .url
        .strip_suffix("/mcp")
        .expect("the MCP URL ends with /mcp")
        .to_owned()
}

fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
}

#[tokio::test]
async fn a_refusal_carries_a_payment_link_that_opens_checkout() {
    let db = TestDb::sqlite().await;
    let fake = FakeStripe::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let url = db.url().to_owned();
    let proxy = start(
        dir.path(),
        &config(
            &url,
            &fake,
            "checkout_on_refusal = { starter = \"pack:pack-100\", team = \"plan:team\" }",
        ),
    );
    let customer = add_customer(&url, "Broke", "starter");
    let key = create_key(&url, &customer);
    let mcp = client(&proxy, &key).await;
    let refused = mcp
        .post(&call(json!(1), "echo", json!({ "message": "hi" })))
        .await
        .response();
    let data = &refused["error"]["data"];
    assert_eq!(data["reason"], "insufficient_credits", "{refused}");
    let link = data["checkout_url"]
        .as_str()
        .expect("a checkout link")
        .to_owned();
    assert!(
        link.starts_with("https://tools.example.test/pay/"),
        "{link}"
    );
    assert!(
        refused["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains(&link)),
        "{refused}"
    );
    // Refusing called nobody.
    assert!(fake.requests().is_empty(), "{:?}", fake.requests());

    // Opening the link (on the proxy's real address) redirects to Stripe.
    let token = link.rsplit_once("/pay/").expect("a pay link").1.to_owned();
    let http = no_redirects();
    let open = || http.get(format!("{}/pay/{token}", base(&proxy))).send();
    let first = open().await.expect("GET /pay");
    assert_eq!(first.status(), 303);
    let location = first.headers()["location"]
        .to_str()
        .expect("ascii")
        .to_owned();
    let sessions = fake.checkout_sessions();
    assert_eq!(sessions.len(), 1, "{sessions:?}");
    let session = &sessions[0];
    assert_eq!(location, session["url"].as_str().expect("url"));
    assert_eq!(session["mode"], "payment");
    assert_eq!(session["client_reference_id"], customer.as_str());
    assert_eq!(
        session["metadata"]["mcp_meter_customer_id"],
        customer.as_str()
    );
    assert_eq!(session["metadata"]["mcp_meter_credit_pack"], "pack-100");
    assert_eq!(session["line_items"][0]["price"], "price_pack100");
    assert_eq!(session["success_url"], "https://example.test/thanks");
    assert_eq!(
        session["customer"],
        stripe_customer_of(&fake, &customer).as_str()
    );
    // Opening it again leads to the same session.
    let again = open().await.expect("GET /pay again");
    assert_eq!(again.status(), 303);
    assert_eq!(
        again.headers()["location"].to_str().expect("ascii"),
        location
    );
    assert_eq!(fake.checkout_sessions().len(), 1);

    // Altered or foreign tokens are refused without calling Stripe.
    let calls_before = fake.requests().len();
    let (payload, _) = token.split_once('.').expect("two parts");
    for bad in [format!("{payload}.AAAA"), "nonsense".to_owned()] {
        let answer = http
            .get(format!("{}/pay/{bad}", base(&proxy)))
            .send()
            .await
            .expect("GET /pay bad");
        assert_eq!(answer.status(), 400, "{bad}");
        let text = answer.text().await.expect("text");
        assert!(text.contains("not valid"), "{text}");
    }
    // Stripe failing: the customer is told to try again, nothing is kept.
    // (A second later, so the refusal's link is a new one.)
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    fake.push_fault(Some("/v1/checkout/sessions"), Fault::Status(500));
    let other = {
        let refused = mcp
            .post(&call(json!(2), "add", json!({ "a": 1, "b": 2 })))
            .await
            .response();
        let link = refused["error"]["data"]["checkout_url"]
            .as_str()
            .expect("a link")
            .to_owned();
        link.rsplit_once("/pay/").expect("pay").1.to_owned()
    };
    let failed = http
        .get(format!("{}/pay/{other}", base(&proxy)))
        .send()
        .await
        .expect("GET /pay during a Stripe outage");
    assert_eq!(failed.status(), 503);
    assert_eq!(fake.requests().len(), calls_before + 1);
    drop(proxy);
}

#[tokio::test]
async fn customers_open_checkout_with_their_own_key() {
    let db = TestDb::sqlite().await;
    let fake = FakeStripe::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let url = db.url().to_owned();
    let proxy = start(dir.path(), &config(&url, &fake, ""));
    let customer = add_customer(&url, "Buyer", "starter");
    let key = create_key(&url, &customer);
    let http = reqwest::Client::new();
    let endpoint = format!("{}/api/v1/me/checkout", base(&proxy));
    let post = |body: Value, key: Option<&str>, idempotency: Option<&str>| {
        let mut request = http.post(&endpoint).json(&body);
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        if let Some(idempotency) = idempotency {
            request = request.header("idempotency-key", idempotency);
        }
        async move {
            let response = request.send().await.expect("POST /api/v1/me/checkout");
            let status = response.status().as_u16();
            let body: Value = response.json().await.expect("a JSON body");
            (status, body)
        }
    };

    let (status, body) = post(json!({ "plan": "team" }), Some(&key), Some("upgrade-1")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["item"], "plan:team");
    let sessions = fake.checkout_sessions();
    assert_eq!(sessions.len(), 1);
    assert_eq!(body["id"], sessions[0]["id"]);
    assert_eq!(body["url"], sessions[0]["url"]);
    assert_eq!(sessions[0]["mode"], "subscription");
    assert_eq!(sessions[0]["metadata"]["mcp_meter_plan"], "team");
    assert_eq!(sessions[0]["line_items"][0]["price"], "price_team");
    let subscription_meta = fake.requests_to("POST", "/v1/checkout/sessions")[0]
        .param("subscription_data[metadata][mcp_meter_customer_id]")
        .map(str::to_owned);
    assert_eq!(subscription_meta.as_deref(), Some(customer.as_str()));
    // The same Idempotency-Key gets the same session.
    let (status, again) = post(json!({ "plan": "team" }), Some(&key), Some("upgrade-1")).await;
    assert_eq!((status, &again["id"]), (200, &body["id"]));
    assert_eq!(fake.checkout_sessions().len(), 1);
    let (status, pack) = post(json!({ "pack": "pack-100" }), Some(&key), None).await;
    assert_eq!(status, 200, "{pack}");
    assert_eq!(fake.checkout_sessions()[1]["mode"], "payment");
    // One Stripe customer for both.
    stripe_customer_of(&fake, &customer);

    let stripe_calls = fake.requests().len();
    for (body, key, status, code) in [
        (
            json!({ "pack": "pack-100" }),
            None,
            401,
            "missing_credential",
        ),
        (json!({ "pack": "pack-100" }), Some("mcp_wrong"), 401, ""),
        (json!({}), Some(key.as_str()), 400, "invalid_request"),
        (
            json!({ "pack": "pack-100", "plan": "team" }),
            Some(key.as_str()),
            400,
            "invalid_request",
        ),
        (
            json!({ "pack": "pack-999" }),
            Some(key.as_str()),
            400,
            "unknown_item",
        ),
        (
            json!({ "plan": "starter" }),
            Some(key.as_str()),
            400,
            "unknown_item",
        ),
        (
            json!({ "pack": "pack-100", "coupon": "x" }),
            Some(key.as_str()),
            400,
            "invalid_request",
        ),
        (
            json!("pack-100"),
            Some(key.as_str()),
            400,
            "invalid_request",
        ),
    ] {
        let (got, answer) = post(body.clone(), key, None).await;
        assert_eq!(got, status, "{body}: {answer}");
        assert!(answer["error"]["message"].is_string(), "{answer}");
        if !code.is_empty() {
            assert_eq!(answer["error"]["code"], code, "{body}: {answer}");
        }
    }
    assert_eq!(
        fake.requests().len(),
        stripe_calls,
        "bad requests never reach Stripe"
    );

    // Stripe failing is a 503 the client may retry.
    fake.push_fault(Some("/v1/checkout/sessions"), Fault::Status(503));
    let (status, answer) = post(json!({ "pack": "pack-100" }), Some(&key), None).await;
    assert_eq!(
        (status, &answer["error"]["code"]),
        (503, &json!("stripe_unavailable"))
    );

    // A suspended customer cannot buy.
    let (ok, out) = admin_text(&url, &["customers", "suspend", &customer]);
    assert!(ok, "{out}");
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let (status, answer) = post(json!({ "pack": "pack-100" }), Some(&key), None).await;
    assert_eq!(status, 403, "{answer}");
    drop(proxy);
}

// Multi-threaded: the CLI runs as a blocking child process while the fake
// Stripe answers it from this runtime.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_opens_checkout_and_links_from_the_cli() {
    let db = TestDb::sqlite().await;
    let fake = FakeStripe::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let url = db.url().to_owned();
    let path = dir.path().join("mcp-meter.toml");
    std::fs::write(&path, config(&url, &fake, "")).expect("write config");
    let customer = add_customer(&url, "Phone order", "starter");
    let cli = |args: &[&str]| {
        let output = std::process::Command::new(bin())
            .args(args)
            .args(["--config", path.to_str().expect("utf-8")])
            .output()
            .expect("run mcp-meter");
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    let (ok, out, err) = cli(&[
        "stripe",
        "checkout",
        "--customer",
        &customer,
        "--pack",
        "pack-100",
        "--json",
    ]);
    assert!(ok, "{err}");
    let printed: Value = serde_json::from_str(&out).expect("JSON");
    let sessions = fake.checkout_sessions();
    assert_eq!(sessions.len(), 1);
    assert_eq!(printed["url"], sessions[0]["url"]);
    assert_eq!(sessions[0]["client_reference_id"], customer.as_str());

    let (ok, out, err) = cli(&["stripe", "link", "--customer", &customer, "--plan", "team"]);
    assert!(ok, "{err}");
    assert!(
        out.trim().starts_with("https://tools.example.test/pay/"),
        "{out}"
    );
    assert_eq!(fake.checkout_sessions().len(), 1, "a link calls nobody");

    for (args, needle) in [
        (
            vec![
                "stripe",
                "checkout",
                "--customer",
                &customer,
                "--pack",
                "nope",
            ],
            "no credit pack `nope`",
        ),
        (
            vec![
                "stripe",
                "checkout",
                "--customer",
                &customer,
                "--plan",
                "starter",
            ],
            "has no Stripe price",
        ),
        (
            vec![
                "stripe",
                "checkout",
                "--customer",
                "cus_missing",
                "--pack",
                "pack-100",
            ],
            "no customer",
        ),
        (
            vec![
                "stripe",
                "link",
                "--customer",
                "cus_missing",
                "--pack",
                "pack-100",
            ],
            "no customer",
        ),
    ] {
        let (ok, _, err) = cli(&args);
        assert!(!ok && err.contains(needle), "{args:?}: {err}");
    }
}

/// The whole loop: a customer out of credits is refused with a payment
/// link, opens it, "pays" (the test posts the `checkout.session.completed`
/// event Stripe would send, signed by Stripe's own library, twice), and
/// the next call is served; the ledger shows the purchase once.
#[tokio::test]
async fn a_refused_customer_pays_through_the_link_and_is_served() {
    let db = TestDb::sqlite().await;
    let fake = FakeStripe::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let url = db.url().to_owned();
    let proxy = start(
        dir.path(),
        &config(
            &url,
            &fake,
            "checkout_on_refusal = { starter = \"pack:pack-100\" }",
        ),
    );
    let customer = add_customer(&url, "Returning", "starter");
    let key = create_key(&url, &customer);
    let mcp = client(&proxy, &key).await;
    let echo = |id: i64| call(json!(id), "echo", json!({ "message": "paid?" }));
    let refused = mcp.post(&echo(1)).await.response();
    assert_eq!(
        refused["error"]["data"]["reason"], "insufficient_credits",
        "{refused}"
    );
    let link = refused["error"]["data"]["checkout_url"]
        .as_str()
        .expect("a checkout link")
        .to_owned();
    let token = link.rsplit_once("/pay/").expect("a pay link").1.to_owned();
    let opened = no_redirects()
        .get(format!("{}/pay/{token}", base(&proxy)))
        .send()
        .await
        .expect("GET /pay");
    assert_eq!(opened.status(), 303);
    let session_id = fake.checkout_sessions()[0]["id"]
        .as_str()
        .expect("a session id")
        .to_owned();

    // The customer pays; Stripe sends the event (and sends it again).
    fake.complete_checkout_session(&session_id);
    let mut session = fake.checkout_sessions()[0].clone();
    if let Some(object) = session.as_object_mut() {
        object.remove("line_items");
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64;
    let event = json!({
        "id": "evt_paid_1", "object": "event", "api_version": "2025-09-30.clover",
        "created": now, "livemode": false, "pending_webhooks": 1,
        "type": "checkout.session.completed", "data": { "object": session },
    })
    .to_string();
    let http = reqwest::Client::new();
    for delivery in 0..2 {
        let answer = http
            .post(format!("{}/webhooks/stripe", base(&proxy)))
            .header("content-type", "application/json")
            .header(
                "stripe-signature",
                stripe_sign::sign(&event, "whsec_test_outbound", now),
            )
            .body(event.clone())
            .send()
            .await
            .expect("POST /webhooks/stripe");
        assert_eq!(answer.status(), 200, "delivery {delivery}");
    }
    assert!(
        eventually(Duration::from_secs(20), || balance(&url, &customer) == 100).await,
        "the pack's credits arrive"
    );
    let served = mcp.post(&echo(2)).await.response();
    assert!(served.get("result").is_some(), "{served}");
    assert_eq!(balance(&url, &customer), 99);
    let purchases: Vec<Value> = ledger(&url, &customer)
        .into_iter()
        .filter(|e| e["kind"] == "purchase")
        .collect();
    assert_eq!(purchases.len(), 1, "{purchases:?}");
    assert_eq!(purchases[0]["amount"], 100);
    assert_eq!(
        purchases[0]["idempotency_key"],
        format!("checkout:{session_id}").as_str()
    );
    drop(proxy);
}
