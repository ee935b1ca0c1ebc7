//! The fake Stripe API (`tests/common/fake_stripe.rs`) against the real
//! typed `async-stripe` client: every answer parses, idempotency and meter
//! event identifiers behave like Stripe, and injected faults reach the client
//! as the errors they stand for.

#[path = "common/fake_stripe.rs"]
mod fake_stripe;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use fake_stripe::{FakeStripe, Fault};
use stripe::{IdempotencyKey, RequestStrategy, StripeError, StripeRequest};
use stripe_billing::billing_meter_event::CreateBillingMeterEvent;
use stripe_billing::invoice_item::{CreateInvoiceItem, ListInvoiceItem, Period};
use stripe_checkout::checkout_session::{
    CreateCheckoutSession, CreateCheckoutSessionLineItems, ListCheckoutSession,
    RetrieveCheckoutSession,
};
use stripe_checkout::{CheckoutSessionMode, CheckoutSessionPaymentStatus, CheckoutSessionStatus};
use stripe_core::customer::{CreateCustomer, RetrieveCustomer, RetrieveCustomerReturned};

const METER: &str = "mcp_tool_calls";

fn key(k: &str) -> RequestStrategy {
    RequestStrategy::Idempotent(IdempotencyKey::new(k).expect("a valid idempotency key"))
}

fn client(fake: &FakeStripe) -> stripe::Client {
    stripe::ClientBuilder::new("sk_test_x")
        .url(fake.base_url())
        .timeout(Duration::from_secs(2))
        .build()
        .expect("client")
}

fn metadata(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn meter_event(customer: &str, value: i64, identifier: &str) -> CreateBillingMeterEvent {
    let payload = metadata(&[
        ("stripe_customer_id", customer),
        ("value", &value.to_string()),
    ]);
    CreateBillingMeterEvent::new(METER, payload).identifier(identifier)
}

/// The status of a Stripe error, or a panic naming what came instead.
fn stripe_status<T: std::fmt::Debug>(result: Result<T, StripeError>) -> (u16, stripe::ApiErrors) {
    match result {
        Err(StripeError::Stripe(error, status)) => (status, *error),
        other => panic!("expected a Stripe error, got {other:?}"),
    }
}

#[tokio::test]
async fn the_typed_client_parses_every_answer() {
    let fake = FakeStripe::start().await;
    let client = client(&fake);

    let customer = CreateCustomer::new()
        .email("ada@example.com")
        .name("Ada")
        .metadata(metadata(&[("mcp_meter_customer_id", "c_1")]))
        .send(&client)
        .await
        .expect("create customer");
    assert_eq!(customer.id.as_str(), "cus_fake_1");
    assert_eq!(customer.email.as_deref(), Some("ada@example.com"));
    assert_eq!(
        customer
            .metadata
            .as_ref()
            .and_then(|m| m.get("mcp_meter_customer_id")),
        Some(&"c_1".to_owned())
    );
    match RetrieveCustomer::new(customer.id.clone())
        .send(&client)
        .await
    {
        Ok(RetrieveCustomerReturned::Customer(c)) => assert_eq!(c.name.as_deref(), Some("Ada")),
        other => panic!("retrieve customer: {other:?}"),
    }

    let session = CreateCheckoutSession::new()
        .mode(CheckoutSessionMode::Payment)
        .customer(customer.id.as_str())
        .client_reference_id("c_1")
        .metadata(metadata(&[("mcp_meter_pack", "starter")]))
        .success_url("https://example.test/ok")
        .cancel_url("https://example.test/cancel")
        .line_items(vec![CreateCheckoutSessionLineItems {
            price: Some("price_1".into()),
            quantity: Some(2),
            ..Default::default()
        }])
        .send(&client)
        .await
        .expect("create checkout session");
    assert_eq!(session.id.as_str(), "cs_fake_1");
    assert_eq!(
        session.url.as_deref(),
        Some("https://checkout.stripe.test/c/pay/cs_fake_1")
    );
    assert_eq!(session.status, Some(CheckoutSessionStatus::Open));
    assert_eq!(session.payment_status, CheckoutSessionPaymentStatus::Unpaid);
    assert_eq!(session.expires_at, session.created + 86_400);
    assert_eq!(session.client_reference_id.as_deref(), Some("c_1"));
    let recorded = &fake.checkout_sessions()[0];
    assert_eq!(recorded["line_items"][0]["price"], "price_1");
    assert_eq!(recorded["line_items"][0]["quantity"], 2);
    assert_eq!(recorded["metadata"]["mcp_meter_pack"], "starter");

    fake.complete_checkout_session("cs_fake_1");
    let completed = RetrieveCheckoutSession::new("cs_fake_1")
        .send(&client)
        .await
        .expect("retrieve checkout session");
    assert_eq!(completed.status, Some(CheckoutSessionStatus::Complete));
    assert_eq!(completed.payment_status, CheckoutSessionPaymentStatus::Paid);
    let listed = ListCheckoutSession::new()
        .customer(customer.id.as_str())
        .status(CheckoutSessionStatus::Complete)
        .send(&client)
        .await
        .expect("list checkout sessions");
    assert_eq!(listed.data.len(), 1);
    assert!(!listed.has_more);
    assert_eq!(listed.url, "/v1/checkout/sessions");

    let now = fake.now();
    let event = meter_event(customer.id.as_str(), 5, "call-1")
        .timestamp(now - 60)
        .customize()
        .request_strategy(key("k1"))
        .send(&client)
        .await
        .expect("create meter event");
    assert_eq!(event.identifier, "call-1");
    assert_eq!(event.timestamp, now - 60);
    assert_eq!(fake.meter_total("cus_fake_1", METER), 5);
    let request = fake
        .requests_to("POST", "/v1/billing/meter_events")
        .remove(0);
    assert_eq!(request.idempotency_key.as_deref(), Some("k1"));
    assert_eq!(request.param("payload[value]"), Some("5"));
    assert_eq!(request.status, Some(200));

    let item = CreateInvoiceItem::new()
        .customer(customer.id.as_str())
        .amount(1234)
        .currency(stripe_types::Currency::USD)
        .description("overage")
        .period(Period::new(now, now - 3_600))
        .send(&client)
        .await
        .expect("create invoice item");
    assert_eq!(item.id.as_str(), "ii_fake_1");
    assert_eq!(
        (item.amount, item.period.start, item.period.end),
        (1234, now - 3_600, now)
    );
    let items = ListInvoiceItem::new()
        .customer(customer.id.as_str())
        .send(&client)
        .await
        .expect("list invoice items");
    assert_eq!(items.data.len(), 1);

    fake.add_subscription(FakeStripe::subscription_json(
        "sub_1",
        "cus_fake_1",
        "price_pro",
        "active",
    ));
    match RetrieveCustomer::new("cus_fake_1")
        .expand(vec!["subscriptions".to_owned()])
        .send(&client)
        .await
    {
        Ok(RetrieveCustomerReturned::Customer(c)) => {
            let subscriptions = c.subscriptions.expect("expanded subscriptions");
            assert_eq!(subscriptions.data[0].id.as_str(), "sub_1");
            assert_eq!(
                subscriptions.data[0].items.data[0].price.id.as_str(),
                "price_pro"
            );
        }
        other => panic!("retrieve customer: {other:?}"),
    }
}

#[tokio::test]
async fn missing_objects_and_deleted_customers_look_like_stripe() {
    let fake = FakeStripe::start().await;
    let client = client(&fake);
    let (status, error) = stripe_status(RetrieveCustomer::new("cus_nope").send(&client).await);
    assert_eq!(status, 404);
    assert_eq!(error.code, Some(stripe::ApiErrorsCode::ResourceMissing));

    fake.add_customer("cus_Stripe1", Some("old@example.com"));
    fake.delete_customer("cus_Stripe1");
    match RetrieveCustomer::new("cus_Stripe1").send(&client).await {
        Ok(RetrieveCustomerReturned::DeletedCustomer(c)) => {
            assert_eq!(c.id.as_str(), "cus_Stripe1")
        }
        other => panic!("expected a deleted customer, got {other:?}"),
    }
    let (status, _) = stripe_status(
        CreateInvoiceItem::new()
            .customer("cus_Stripe1")
            .amount(1)
            .send(&client)
            .await,
    );
    assert_eq!(status, 400);
}

#[tokio::test]
async fn an_idempotent_replay_answers_the_first_result() {
    let fake = FakeStripe::start().await;
    let client = client(&fake);
    let create = || {
        CreateCustomer::new()
            .email("ada@example.com")
            .metadata(metadata(&[("a", "1"), ("b", "2")]))
    };
    let first = create()
        .customize()
        .request_strategy(key("cust-1"))
        .send(&client)
        .await
        .unwrap();
    let again = create()
        .customize()
        .request_strategy(key("cust-1"))
        .send(&client)
        .await
        .unwrap();
    assert_eq!(first.id, again.id);
    assert_eq!(fake.customers().len(), 1);
    let replays: Vec<bool> = fake.requests().iter().map(|r| r.replayed).collect();
    assert_eq!(replays, [false, true]);

    // The same key with other parameters is refused.
    let other = CreateCustomer::new()
        .email("bob@example.com")
        .customize()
        .request_strategy(key("cust-1"))
        .send(&client)
        .await;
    let (status, error) = stripe_status(other);
    assert_eq!(status, 400);
    assert_eq!(error.type_, stripe::ApiErrorsType::IdempotencyError);
    assert_eq!(fake.customers().len(), 1);
}

#[tokio::test]
async fn a_duplicate_meter_identifier_is_refused_and_not_counted() {
    let fake = FakeStripe::start().await;
    let client = client(&fake);
    meter_event("cus_1", 5, "call-1")
        .send(&client)
        .await
        .expect("first event");
    let (status, error) = stripe_status(meter_event("cus_1", 5, "call-1").send(&client).await);
    assert_eq!(status, 400);
    assert_eq!(error.type_, stripe::ApiErrorsType::InvalidRequestError);
    assert_eq!(fake.meter_events().len(), 1);
    assert_eq!(fake.meter_total("cus_1", METER), 5);

    // Timestamps are Unix seconds within Stripe's window (milliseconds are refused).
    let millis = meter_event("cus_1", 1, "call-2").timestamp(fake.now() * 1000);
    let (status, error) = stripe_status(millis.send(&client).await);
    assert_eq!((status, error.param.as_deref()), (400, Some("timestamp")));
    assert_eq!(fake.meter_events().len(), 1);
}

#[tokio::test]
async fn an_injected_status_reaches_the_client_without_an_effect() {
    let fake = FakeStripe::start().await;
    let client = client(&fake);
    fake.push_fault(Some("/v1/customers"), Fault::Status(500));
    let (status, error) = stripe_status(CreateCustomer::new().send(&client).await);
    assert_eq!(status, 500);
    assert_eq!(error.type_, stripe::ApiErrorsType::ApiError);
    assert!(fake.customers().is_empty());

    fake.push_fault(None, Fault::Status(429));
    let (status, error) = stripe_status(meter_event("cus_1", 1, "x").send(&client).await);
    assert_eq!(status, 429);
    assert_eq!(error.code, Some(stripe::ApiErrorsCode::RateLimit));
    assert!(fake.meter_events().is_empty());

    // Faults are consumed: the next request goes through.
    CreateCustomer::new()
        .send(&client)
        .await
        .expect("after the fault");
    assert_eq!(fake.customers().len(), 1);
    let statuses: Vec<Option<u16>> = fake.requests().iter().map(|r| r.status).collect();
    assert_eq!(statuses, [Some(500), Some(429), Some(200)]);
}

#[tokio::test]
async fn a_dropped_connection_is_a_client_error_not_a_hang() {
    let fake = FakeStripe::start().await;
    let client = client(&fake);
    fake.push_fault(Some("/v1/billing/"), Fault::Drop);
    let started = Instant::now();
    let result = meter_event("cus_1", 3, "call-1").send(&client).await;
    assert!(
        matches!(result, Err(StripeError::ClientError(_))),
        "expected a client error, got {result:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "the drop took {:?}",
        started.elapsed()
    );
    assert!(fake.meter_events().is_empty());
    assert_eq!(fake.requests()[0].status, None);
}

#[tokio::test]
async fn a_lost_answer_retried_with_the_same_key_counts_once() {
    let fake = FakeStripe::start().await;
    let client = client(&fake);
    let send = |k: &'static str| {
        meter_event("cus_1", 7, "call-1")
            .customize()
            .request_strategy(key(k))
            .send(&client)
    };

    fake.push_fault(
        Some("/v1/billing/meter_events"),
        Fault::StatusAfterEffect(500),
    );
    let (status, _) = stripe_status(send("k1").await);
    assert_eq!(status, 500);
    assert_eq!(fake.meter_events().len(), 1);

    // The same key replays the stored success; a new key hits the identifier.
    let replayed = send("k1").await.expect("the replay");
    assert_eq!(replayed.identifier, "call-1");
    let (status, _) = stripe_status(send("k2").await);
    assert_eq!(status, 400);

    fake.push_fault(None, Fault::DropAfterEffect);
    let dropped = meter_event("cus_1", 1, "call-2")
        .customize()
        .request_strategy(key("k3"));
    assert!(matches!(
        dropped.send(&client).await,
        Err(StripeError::ClientError(_))
    ));
    meter_event("cus_1", 1, "call-2")
        .customize()
        .request_strategy(key("k3"))
        .send(&client)
        .await
        .expect("the retry of a dropped answer");

    assert_eq!(fake.meter_events().len(), 2);
    assert_eq!(fake.meter_total("cus_1", METER), 8);
}

#[tokio::test]
async fn a_slow_request_still_takes_effect_after_the_client_gives_up() {
    let fake = FakeStripe::start().await;
    let client = client(&fake);
    fake.push_fault(None, Fault::Slow(Duration::from_millis(400)));
    let result = meter_event("cus_1", 2, "slow-1")
        .customize()
        .request_strategy(key("k-slow"))
        .timeout(Duration::from_millis(100))
        .send(&client)
        .await;
    assert!(
        matches!(result, Err(StripeError::Timeout)),
        "got {result:?}"
    );

    // While it runs, the same key is in use.
    let (status, error) = stripe_status(
        meter_event("cus_1", 2, "slow-1")
            .customize()
            .request_strategy(key("k-slow"))
            .send(&client)
            .await,
    );
    assert_eq!(status, 409);
    assert_eq!(error.code, Some(stripe::ApiErrorsCode::IdempotencyKeyInUse));

    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(fake.meter_events().len(), 1);
    meter_event("cus_1", 2, "slow-1")
        .customize()
        .request_strategy(key("k-slow"))
        .send(&client)
        .await
        .expect("the replay after the slow request finished");
    assert_eq!(fake.meter_total("cus_1", METER), 2);
}

#[tokio::test]
async fn lists_page_newest_first() {
    let fake = FakeStripe::start().await;
    let client = fake.client();
    for _ in 0..3 {
        CreateCheckoutSession::new()
            .mode(CheckoutSessionMode::Setup)
            .send(&client)
            .await
            .expect("create session");
    }
    let first = ListCheckoutSession::new()
        .limit(2)
        .send(&client)
        .await
        .unwrap();
    let ids: Vec<&str> = first.data.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(ids, ["cs_fake_3", "cs_fake_2"]);
    assert!(first.has_more);
    let next = ListCheckoutSession::new()
        .limit(2)
        .starting_after("cs_fake_2")
        .send(&client)
        .await
        .unwrap();
    let ids: Vec<&str> = next.data.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(ids, ["cs_fake_1"]);
    assert!(!next.has_more);
}

#[tokio::test]
async fn garbage_gets_stripe_shaped_errors() {
    let fake = FakeStripe::start().await;
    let http = reqwest::Client::new();
    let url = |path: &str| format!("{}{path}", fake.base_url().trim_end_matches('/'));
    let post = |path: &str, body: &'static str| {
        http.post(url(path))
            .bearer_auth("sk_test_x")
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
    };

    for (path, body) in [
        ("/v1/customers", "email=%zz"),
        ("/v1/customers", "metadata[a=1"),
        ("/v1/customers", "metadata=x&metadata[a]=1"),
        (
            "/v1/billing/meter_events",
            "event_name=e&payload[stripe_customer_id]=c&payload[value]=1.5",
        ),
        ("/v1/billing/meter_events", "payload[value]=1"),
        ("/v1/checkout/sessions", "mode=payment"),
        ("/v1/invoiceitems", "customer=cus_nope&amount=1"),
    ] {
        let answer = post(path, body).await.expect("an answer");
        assert_eq!(answer.status(), 400, "{path} {body}");
        let error: serde_json::Value = answer.json().await.expect("a JSON error");
        assert!(error["error"]["message"].is_string(), "{error}");
    }
    let answer = post("/v1/nothing", "").await.unwrap();
    assert_eq!(answer.status(), 404);
    let answer = http.get(url("/v1/customers/cus_1")).send().await.unwrap();
    assert_eq!(answer.status(), 401);
    assert!(fake.customers().is_empty() && fake.meter_events().is_empty());

    // curl-style encoded brackets decode like raw ones.
    let answer = post(
        "/v1/billing/meter_events",
        "event_name=e&payload%5Bstripe_customer_id%5D=cus_9&payload%5Bvalue%5D=4",
    )
    .await
    .unwrap();
    assert_eq!(answer.status(), 200);
    assert_eq!(fake.meter_total("cus_9", "e"), 4);
}
